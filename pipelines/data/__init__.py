"""Data stage: read sources (readers), convert them to Trace (converters), clean, mix and write the shards."""
