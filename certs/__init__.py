"""TLS material for vramguard: a private CA, issuing certificates, and hot reloading.

Modules: ``authority`` (pure issuing), ``files`` (atomic writes), ``reloading`` (certwatcher),
``serving`` (uvicorn with a reloading certificate). Nothing is imported here so that the CLI
does not pull in uvicorn.
"""
