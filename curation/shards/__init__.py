"""WebDataset shards: deterministic, checksummed, atomically written, resumable, written in parallel.

    mavors shards build manifests/mixtures/demo-stage2.yaml     # select, transcode, write
    mavors shards verify mavors-work/shards/demo-stage2         # checksums, counts, members, decodability

One concept per module (import them by name; this package re-exports nothing):

* :mod:`curation.shards.format`: the shard record, the same for mixture and DPO pair shards
  (``KEY.json`` + ``KEY.<i>.<ext>`` per medium, the JSON's fields);
* :mod:`curation.shards.writer`: byte-exact, durable tar writing, exact sizes, packing, ``index.json``;
* :mod:`curation.shards.build`: a mixture stage planned into shards and written (Ray), finished shards skipped;
* :mod:`curation.shards.verify`: ``mavors shards verify``;
* :mod:`curation.shards.read`: the one reader (index listing, samples back out of shards).
"""
