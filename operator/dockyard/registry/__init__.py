"""The embedded OCI registry server (`dockyard registry serve`) and its online GC.

Modules: `app` (HTTP surface), `connections` (timeouts, connection limit, malformed
requests), `pools` (executors per kind of work, catalog cache), `storage` (filesystem
driver), `uploads` (streaming blob uploads), `manifests` (manifest validation), `auth`
(htpasswd), `gc`, `metrics`, `config`, `server` (process wiring) and `cli`.
"""
