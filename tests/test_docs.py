"""Docs generated from code stay in sync with it."""

from __future__ import annotations

from graphcache.policies import markdown_table


def test_policy_table_is_the_generated_one(root):
    policies = (root / "docs" / "policies.md").read_text()
    assert markdown_table() in policies, "regenerate with `graphcache policies --markdown` into docs/policies.md"


def test_readme_links_resolve(root):
    import re

    readme = (root / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith("http"):
            assert (root / target).exists(), target


def test_passes_readme_lists_every_pipeline_pass(root):
    from graphcache.passes import default_pipeline
    from graphcache.predictors import Reuse

    text = (root / "passes" / "README.md").read_text()
    for p in default_pipeline("stack", Reuse(), lambda i: i == 0):
        assert f"`{p.name}`" in text


def test_passes_readme_has_the_generated_table_of_every_pass(root):
    from graphcache.passes import all_passes, markdown_table

    text = (root / "passes" / "README.md").read_text()
    assert markdown_table() in text, "regenerate with graphcache.passes.markdown_table() into passes/README.md"
    assert len(all_passes()) >= 16
