"""Published weights: registry, download and cache, converters."""
