"""nxnw: live migration of a PaaS data tier (datastore, memcache, ZooKeeper) from N1 to N2."""

__version__ = "0.1.0"
