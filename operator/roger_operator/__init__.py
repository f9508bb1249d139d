"""The Roger operator: Partition and Callback resources reconciled into worker Deployments.

Layers (kubebuilder-like): ``builders`` (pure: specs -> manifests and status), ``kube``
(server-side apply and reads), ``rabbit`` (queue declaration, claims, stats, pause),
``handlers`` (thin kopf handlers: read -> build -> apply) and ``cli`` (``roger-operator``).
"""

GROUP = "roger.dev"
VERSION = "v1alpha1"
FIELD_MANAGER = "roger-operator"
