"""Data: webdataset shards, shard writer, degradations, DataModules, the built-in captioned dataset."""
