"""The embedded OCI registry server (`dockyard registry serve`) and its online GC.

Modules: `app` (HTTP surface), `storage` (filesystem driver), `uploads` (streaming blob
uploads), `manifests` (manifest validation), `auth` (htpasswd), `gc`, `metrics`,
`config`, `server` (process wiring) and `cli`.
"""
