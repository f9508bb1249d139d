{{/* Chart name. */}}
{{- define "roger.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless the release name has it. */}}
{{- define "roger.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The operator's resources: <fullname>-operator. */}}
{{- define "roger.operatorName" -}}
{{- printf "%s-operator" (include "roger.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "roger.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels of the operator's resources. */}}
{{- define "roger.labels" -}}
helm.sh/chart: {{ include "roger.chart" . }}
{{ include "roger.selectorLabels" . }}
{{ include "roger.sharedLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Standard labels of the chart's other resources (add a component). */}}
{{- define "roger.baseLabels" -}}
helm.sh/chart: {{ include "roger.chart" . }}
app.kubernetes.io/name: {{ include "roger.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "roger.sharedLabels" . }}
{{- end }}

{{- define "roger.sharedLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: roger
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The operator pod selector (immutable). */}}
{{- define "roger.selectorLabels" -}}
app.kubernetes.io/name: {{ include "roger.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "roger.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "roger.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "roger.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
What the operator does in the namespaces it watches. Must cover OPERATOR_RULES in
operator/roger_operator/builders/rbac.py (tests/unit/test_chart.py checks it), including
the worker rules it grants to every worker Role (RBAC forbids granting what one lacks).
*/}}
{{- define "roger.namespacedRules" -}}
# Partitions, Callbacks and Schedules: watch, finalizers (kopf puts one on each Schedule
# for its timer) and kopf annotations, status.
- apiGroups: [roger.dev]
  resources: [partitions, callbacks, schedules]
  verbs: [get, list, watch, patch, update]
- apiGroups: [roger.dev]
  resources: [partitions/status, schedules/status]
  verbs: [get, patch, update]
- apiGroups: [roger.dev]
  resources: [partitions/finalizers, schedules/finalizers]
  verbs: [update]
# spec.autoscaling: the scale subresource, and worker Pods' pod-deletion-cost.
- apiGroups: [roger.dev]
  resources: [partitions/scale]
  verbs: [get, patch, update]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, patch]
# The children of each Partition (server-side apply).
- apiGroups: [""]
  resources: [configmaps, services, serviceaccounts]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, update, patch, delete]
# Which old config ConfigMaps a ReplicaSet with replicas still names.
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [list]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, update, patch, delete]
# spec.autoscaling.engine keda: the KEDA ScaledObject and TriggerAuthentication it renders.
- apiGroups: [keda.sh]
  resources: [scaledobjects, triggerauthentications]
  verbs: [get, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, update, patch, delete]
# Worker pods: deleting a Partition waits until they are gone, their status says why a
# rollout cannot finish, and autoscaling keeps their pod-deletion-cost current.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, patch]
# The AMQP URL, read by name (never listed or watched).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Its own Events, and the workers' (granted to their Roles); list: CallbackRejected.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch, list]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/* Cluster-scoped reads: namespaces (kopf's namespace patterns) and CRDs (discovery). */}}
{{- define "roger.clusterRules" -}}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end }}
