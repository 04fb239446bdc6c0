"""Catalog reports: sections built from the catalog (``sections``), drawn as an HTML page (``html``,
``mavors report RUN_ID``) or printed as tables (``console``, ``mavors catalog stats``).

The sections live in pipelines/ because they read every layer's tables, and the training section reads
the trainers' metrics files (``trainers.metrics``): curation may not import trainers.
"""
