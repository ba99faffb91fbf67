{{/* Names and labels shared by the templates. */}}

{{- define "kflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kflow.labels" -}}
app.kubernetes.io/name: kflow
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kflow.operatorSelector" -}}
app.kubernetes.io/name: kflow
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kflow.postgresSelector" -}}
app.kubernetes.io/name: kflow
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: postgresql
{{- end -}}

{{- define "kflow.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Namespaces watched (not cluster-wide): the listed ones, else the release's. */}}
{{- define "kflow.namespaces" -}}
{{- if .Values.rbac.clusterWide -}}
[]
{{- else -}}
{{- .Values.rbac.watchNamespaces | default (list .Release.Namespace) | toJson -}}
{{- end -}}
{{- end -}}

{{/* Namespaces where segment Pods run: the release's, the watched ones (not
cluster-wide), and runner.namespaces; each gets the runner ServiceAccount and DSN Secret. */}}
{{- define "kflow.runnerNamespaces" -}}
{{- if and .Values.rbac.clusterWide .Values.rbac.watchNamespaces -}}
{{- fail "rbac.watchNamespaces: a cluster-wide operator watches every namespace; list the namespaces whose runs use Pods in runner.namespaces instead" -}}
{{- end -}}
{{- $watched := list -}}
{{- if not .Values.rbac.clusterWide -}}{{- $watched = .Values.rbac.watchNamespaces -}}{{- end -}}
{{- concat (list .Release.Namespace) $watched .Values.runner.namespaces | uniq | toJson -}}
{{- end -}}

{{/* The Secret with the DSN and the key holding it. */}}
{{- define "kflow.dbSecret" -}}
{{- if and (not .Values.postgresql.bundled) (not .Values.postgresql.existingSecret) -}}
{{- fail "postgresql.existingSecret: with postgresql.bundled=false, name the Secret that holds your PostgreSQL's DSN" -}}
{{- end -}}
{{- if and .Values.postgresql.bundled .Values.postgresql.existingSecret -}}
{{- fail "postgresql.existingSecret is for an external PostgreSQL: set postgresql.bundled=false too" -}}
{{- end -}}
{{- .Values.postgresql.existingSecret | default (printf "%s-db" (include "kflow.fullname" .)) -}}
{{- end -}}
{{- define "kflow.dbSecretKey" -}}
{{- if .Values.postgresql.existingSecret -}}{{ .Values.postgresql.existingSecretKey }}{{- else -}}dsn{{- end -}}
{{- end -}}

{{/* The restricted Pod Security Standard, for every Pod of the chart. */}}
{{- define "kflow.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* What the operator may do in a namespace it watches: nothing more. */}}
{{- define "kflow.rules" -}}
- apiGroups: [kflow.io]
  resources: [workflowruns]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [kflow.io]
  resources: [workflowruns/status]
  verbs: [get, patch]
- apiGroups: [kflow.io]
  resources: [workflowdefinitions]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
