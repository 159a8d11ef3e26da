"""First contact: bad options, tampered files and failing model files give a GraphcacheError that names the
field and the fix, never another exception type. Fuzzed with hypothesis (bounded examples)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphcache
from graphcache import calibration
from graphcache.cli import main
from graphcache.errors import GraphcacheError, ModelFileError, PolicyConfigError
from graphcache.policies import available, make_policy, policy_class

from models import hand_written_dit


@pytest.mark.parametrize(("options", "message"), [
    (dict(interval=True), r"fora.interval=True is invalid: expects int, got bool"),
    (dict(interval=2.5), r"fora.interval=2.5 is invalid: expects int, got float"),
    (dict(num_steps=2.5), r"fora.num_steps=2.5 is invalid: expects int or None"),
    (dict(granularity=3), r"fora.granularity=3 is invalid: expects str"),
])
def test_options_of_the_wrong_type_are_refused(options, message):
    with pytest.raises(PolicyConfigError, match=message):
        make_policy("fora", **options)


def test_policy_and_spec_mistakes_are_named():
    with pytest.raises(PolicyConfigError, match=r"policy must be a name.*got NoneType"):
        graphcache.optimize(hand_written_dit()[0], None)
    with pytest.raises(PolicyConfigError, match=r"option 'interval' is given twice"):
        make_policy("fora{interval=2,interval=3}")
    with pytest.raises(PolicyConfigError, match=r"given both in the spec 'fora\{interval=2\}' and as a keyword"):
        make_policy("fora{interval=2}", interval=3)
    assert make_policy("fbcache", threshold=1).threshold == 1  # an int is a float


FUZZ_COUNTS: Counter[str] = Counter()  # printed at the end of the run (conftest)
_NAMES = st.sampled_from(available())
_KEYS = st.one_of(st.sampled_from(["interval", "warmup", "threshold", "order", "lite", "forecast", "num_steps",
                                   "per_sample", "granularity", "calibration", "bogus"]), st.text(max_size=6))
_VALUES = st.one_of(st.integers(-3, 60), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.none(), st.text(max_size=8), st.sampled_from(["taylor:2", "1e9", "none", "true", "3"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=_NAMES, options=st.dictionaries(_KEYS, _VALUES, max_size=3))
def test_fuzz_policy_options_give_a_config_or_a_named_refusal(name, options):
    try:
        config = make_policy(name, **options)
    except PolicyConfigError as err:
        assert str(err).strip()
        FUZZ_COUNTS["options refused"] += 1
        return
    FUZZ_COUNTS["options accepted"] += 1
    assert config.name == name
    assert make_policy(config.spec()) == config  # the canonical spec parses back
    for key, value in options.items():
        assert getattr(config, key) is not None or value is None or isinstance(value, str)


_SPECS = st.one_of(
    st.text(alphabet="fora{}=,:;abcdeilnrstv0123456789 .-", max_size=30),
    st.builds(lambda name, items: f"{name}{{{','.join(f'{k}={v}' for k, v in items)}}}", _NAMES,
              st.lists(st.tuples(st.sampled_from(["interval", "warmup", "threshold", "order", "lite", "forecast"]),
                                 st.sampled_from(["3", "0", "-1", "2.5", "true", "x", "", "none", "taylor:2"])),
                       max_size=3)),
)


@settings(max_examples=150, deadline=None)
@given(spec=_SPECS)
def test_fuzz_spec_strings(spec):
    try:
        config = make_policy(spec)
        assert make_policy(config.spec()) == config
        FUZZ_COUNTS["specs accepted"] += 1
    except PolicyConfigError:
        FUZZ_COUNTS["specs refused"] += 1


def _calibration_file(tmp_path, model, change):
    data = json.loads(calibration.save(tmp_path / "ok.json", model, 5, teacache={
        "coefficients": [1.0, 0.0], "degree": 1, "points": 4, "indicator_range": [0.0, 1.0]},
        magcache={"timesteps": [900.0, 800.0], "ratios": [1.0, 0.99], "steps": 3}).read_text())
    change(data)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("section", "change", "message"), [
    ("teacache", lambda d: d["teacache"].pop("indicator_range"), r"teacache.indicator_range must be a list of 2"),
    ("teacache", lambda d: d["teacache"].update(coefficients=["1", "2"]), r"teacache.coefficients must be a list"),
    ("teacache", lambda d: d["teacache"].update(coefficients=[float("nan")]), r"finite numbers"),
    ("magcache", lambda d: d["magcache"].update(ratios=[1.0]), r"magcache.ratios must be a list of at least 2"),
    ("magcache", lambda d: d["magcache"].update(ratios=[1.0, 1.0, 1.0]), r"differ in length"),
    ("teacache", lambda d: d.update(teacache=[1, 2]), r"'teacache' must be an object"),
])
def test_tampered_calibration_files_are_refused_by_field(tmp_path, section, change, message):
    model, _ = hand_written_dit()
    path = _calibration_file(tmp_path, model, change)
    with pytest.raises(PolicyConfigError, match=message):
        calibration.load(path, section, model)


_JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
                     lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner,
                                                                                           max_size=3)), max_leaves=6)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["teacache.coefficients", "teacache.indicator_range", "teacache", "magcache.ratios",
                              "magcache.timesteps", "schema", "version", "fingerprint"]), value=_JSON)
def test_fuzz_tampered_calibration_fields(tmp_path, where, value):
    model, _ = hand_written_dit()

    def change(data):
        *parents, key = where.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        target[key] = value

    path = _calibration_file(tmp_path, model, change)
    for section in ("teacache", "magcache"):
        try:
            calibration.load(path, section, model)
            FUZZ_COUNTS["calibrations accepted"] += 1
        except PolicyConfigError:
            FUZZ_COUNTS["calibrations refused"] += 1


@pytest.mark.parametrize("cut", [0, 10, 100])
def test_truncated_calibration_files_are_refused(tmp_path, cut):
    model, _ = hand_written_dit()
    path = _calibration_file(tmp_path, model, lambda d: None)
    path.write_text(path.read_text()[:cut])
    with pytest.raises(PolicyConfigError, match=r"corrupt|not a graphcache calibration"):
        calibration.load(path, "teacache", model)


def test_the_fingerprint_covers_every_weight():
    """One changed weight deep inside a tensor (past its first values) is another model."""
    model, _ = hand_written_dit()
    before = calibration.fingerprint(model)
    with torch.no_grad():
        model.head.weight.view(-1)[-1] += 1e-3
    assert calibration.fingerprint(model) != before


def test_fits_with_too_few_points_are_refused():
    rows = [{"modulated": torch.ones(1, 4) * (k + 1), "out": torch.ones(1, 4) * (k + 2), "residual": torch.ones(1, 4),
             "t": 999.0 - k} for k in range(3)]
    with pytest.raises(PolicyConfigError, match=r"degree-4 polynomial needs at least 5 points.*gives 2"):
        calibration.fit_teacache(rows, 4)
    with pytest.raises(PolicyConfigError, match=r"at least 2 steps"):
        calibration.fit_teacache(rows[:1], 1)


def _model_file(tmp_path, body: str):
    path = tmp_path / "model.py"
    path.write_text(body)
    return path


@pytest.mark.parametrize(("body", "message"), [
    ("def build():\n    raise RuntimeError('weights missing')\n", r"build\(\) raised RuntimeError: weights missing"),
    ("import torch\ndef build():\n    return torch.nn.Linear(2, 2), lambda t: 1 / 0\n",
     r"inputs\(999.0\) raised ZeroDivisionError"),
    ("x = (\n", r"failed to import: SyntaxError"),
])
def test_model_files_that_fail_are_named(tmp_path, body, message):
    from graphcache.modelfile import load_model_file

    with pytest.raises(ModelFileError, match=message):
        load_model_file(_model_file(tmp_path, body))


def test_inputs_that_do_not_fit_the_model_say_so():
    from graphcache.capture import capture_export
    from graphcache.errors import UnsupportedGraphError

    model, inputs = hand_written_dit()
    missing = {"latent": inputs(999.0)["latent"]}
    with pytest.raises(UnsupportedGraphError, match=r"fails on these inputs even without graphcache \(TypeError: .*"
                                                    r"noise_level.*names, shapes and dtypes"):
        capture_export(model, missing)


def test_a_dtype_that_does_not_fit_says_so_on_the_first_call():
    from graphcache.errors import UnsupportedGraphError

    model, inputs = hand_written_dit()
    fast = graphcache.optimize(model, "fora", backend="eager")
    with pytest.raises(UnsupportedGraphError, match=r"fails on these inputs even without graphcache \(RuntimeError: "
                                                    r"mat1 and mat2 must have the same dtype.*dtypes"):
        fast(**{**inputs(999.0), "latent": inputs(999.0)["latent"].double()})


def test_cli_keeps_brackets_and_refuses_bad_numbers(tmp_path):
    runner = CliRunner()
    listing = runner.invoke(main, ["policies"])
    assert listing.exit_code == 0 and "[unconditional; conditional]" in listing.output
    for args, text in ((["optimize", "m.py", "--steps", "0"], "0 is not in the range x>=2"),
                       (["calibrate", "m.py", "--steps", "1", "-o", "c.json"], "1 is not in the range x>=3")):
        result = runner.invoke(main, args)
        assert result.exit_code == 2 and text in result.output, result.output
    existing = tmp_path / "a_file"
    existing.write_text("")
    result = runner.invoke(main, ["export", "m.py", "-o", str(existing)])
    assert result.exit_code == 2 and "is a file; --out names the folder" in result.output
    result = runner.invoke(main, ["optimize", str(_model_file(tmp_path, "def build():\n    return 1\n"))])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "ModelFileError" in output and "expected (model, inputs)" in output


def test_error_text_in_brackets_survives_the_console(tmp_path):
    """Rich markup would eat ``[tensorrt]`` in ``pip install 'graphcache[tensorrt]'``: errors are escaped."""
    model_file = _model_file(tmp_path, "def build():\n    return 1\n")
    result = CliRunner().invoke(main, ["optimize", str(model_file), "--policy", "fora{interval='[tensorrt]'}"])
    assert result.exit_code == 2 and "'[tensorrt]'" in result.output, result.output


@pytest.mark.parametrize("name", available())
def test_every_policy_documents_its_fields(name):
    for field, _tp, _default, help_text in policy_class(name).field_docs():
        assert help_text, f"{name}.{field} has no help"


def test_graphcache_errors_are_one_family():
    assert all(issubclass(e, GraphcacheError) for e in (PolicyConfigError, ModelFileError))


def test_the_reference_pipeline_gives_diffusers_output_on_request():
    from diffusers import ImagePipelineOutput

    from graphcache.reference import load_pipeline

    pipe = load_pipeline()

    def run(**kw):
        return pipe(class_labels=[1, 7], num_inference_steps=2, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **kw)

    out = run(return_dict=True)
    assert isinstance(out, ImagePipelineOutput) and torch.equal(out.images, run())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_SPECS, sets=st.lists(st.tuples(_KEYS, st.sampled_from(["3", "x", "", "true", "-1", "2.5", "a=b"])),
                                  max_size=2),
       command=st.sampled_from(["optimize", "export", "calibrate"]))
def test_fuzz_the_cli_exits_with_a_named_error(tmp_path, spec, sets, command):
    """Any policy spec and --set options on a model file whose build() fails: exit 2 with 'error: <Kind>',
    never a traceback."""
    model_file = tmp_path / "failing.py"
    model_file.write_text("def build():\n    raise OSError('no weights here')\n")
    args = [command, str(model_file), "-o", str(tmp_path / "out")] if command != "optimize" else [command,
                                                                                                    str(model_file)]
    if command != "calibrate":
        args += ["--policy", spec] + [a for k, v in sets for a in ("--set", f"{k}={v}")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    kind = "cli" if "Error: " in result.output and "error:" not in result.output else "graphcache"
    FUZZ_COUNTS[f"cli exits ({kind})"] += 1


def test_an_option_named_policy_is_refused_by_name():
    with pytest.raises(PolicyConfigError, match="policy"):
        make_policy("fora", policy=3)
