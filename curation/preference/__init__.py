"""DPO preference pairs (paper §4 Stage 3, App. A) built from a policy checkpoint's own generations.

Modules, one concept each:
  config.py          DpoConfig: sampling per domain, judge, scoring terms, shard size
  decisions.py       DpoInput, Candidate (accepted/refused + reason), Pair, Outcome
  text.py            normalization, coverage, repetition
  judges.py          normalized-match, model (generate / logprob) and routed judges
  scoring.py         caption score = weighted judge rating, coverage, penalties
  qa.py              open-ended QA: correct+terminated+sized positive vs incorrect/too-brief negative
  image_captions.py  N high-temperature captions ranked, high vs low with a margin
  video_captions.py  caption of the video vs caption of its shuffled-segment copy (curation.preference.segments)
  records.py         TRL rows (prompt/chosen/rejected/images/videos), shard samples, datasets loader
  build.py           pair set identity, skip-finished, batches in transactions, shards
  stats.py           the `mavors catalog stats` section

    mavors dpo build --checkpoint PATH --mixture manifests/mixtures/dpo.yaml
"""
