"""The migration proxy: the data endpoint applications use in place of N1's during a migration.

It serves the HTTP data API and the memcached protocol, routes each request as the current
mode says, and owns the repair journal. It may import ``datastore`` and ``sync``, never an
engine's client library directly.
"""
