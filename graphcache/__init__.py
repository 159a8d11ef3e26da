"""graphcache: feature caching for diffusion denoisers as compiler passes."""
