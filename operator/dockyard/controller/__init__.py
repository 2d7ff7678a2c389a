"""The operator: Kopf handlers, reconciliation, conditions and the Kubernetes API adapter."""
