{{/* Full name of the release's objects: the release name, with "-tributary" unless it already says so. */}}
{{- define "tributary.fullname" -}}
{{- if contains "tributary" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-tributary" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the operator pods (never change: Deployment selectors are immutable). */}}
{{- define "tributary.selectorLabels" -}}
app.kubernetes.io/name: tributary-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "tributary.labels" -}}
{{ include "tributary.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: tributary
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "tributary.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tributary.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tributary.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
What the operator may do to the objects it watches and owns: the three kinds
(and their /status and /finalizers), and the objects that run a Cluster.
Pods are deleted one at a time for rolling restarts (StatefulSets use
OnDelete). Nothing else: no secrets, no nodes, no wildcard.
*/}}
{{- define "tributary.rules" -}}
- apiGroups: ["tributary.dev"]
  resources: ["clusters", "topics", "mirrorlinks"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["tributary.dev"]
  resources: ["clusters/status", "topics/status", "mirrorlinks/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["tributary.dev"]
  resources: ["clusters/finalizers", "topics/finalizers", "mirrorlinks/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
