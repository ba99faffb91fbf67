{{/* Names and labels shared by the templates. */}}

{{- define "kflow.name" -}}
{{- .Values.nameOverride | default .Chart.Name -}}
{{- end -}}

{{/* The prefix of every object's name. Never truncated (two releases must not end up
with one name): kflow.validate fails when a name built from it would not fit. */}}
{{- define "kflow.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride -}}
{{- else -}}
{{- $name := include "kflow.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Checks made once per render (included by the operator's Deployment). */}}
{{- define "kflow.validate" -}}
{{- $fullname := include "kflow.fullname" . -}}
{{- $mode := include "kflow.dbMode" . -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $fullname) -}}
{{- fail (printf "fullnameOverride: the names' prefix %q must be lowercase letters, digits and '-' (a DNS label): set fullnameOverride or nameOverride" $fullname) -}}
{{- end -}}
{{- /* The longest name per mode and its limit: a StatefulSet's name <= 52 characters
(its Pods' controller-revision-hash label adds 11 and must fit in 63); a CloudNativePG
Cluster's <= 50 (CloudNativePG refuses longer); a Service's <= 63 (a DNS label). */ -}}
{{- $longest := dict "name" (printf "%s-operator" $fullname) "limit" 63 "what" "Service" -}}
{{- if eq $mode "bundled" -}}
{{- $longest = dict "name" (printf "%s-postgresql" $fullname) "limit" 52 "what" "StatefulSet" -}}
{{- else if eq $mode "cloudnativepg" -}}
{{- $longest = dict "name" (printf "%s-postgresql" $fullname) "limit" 50 "what" "CloudNativePG Cluster" -}}
{{- end -}}
{{- if gt (len $longest.name) (int $longest.limit) -}}
{{- fail (printf "fullnameOverride: the %s name %q is %d characters, more than %d: set fullnameOverride (or nameOverride, or choose a shorter release name) to at most %d characters" $longest.what $longest.name (len $longest.name) (int $longest.limit) (sub (int $longest.limit) (sub (len $longest.name) (len $fullname)))) -}}
{{- end -}}
{{- range $key, $_ := .Values.commonLabels -}}
{{- if or (hasPrefix "app.kubernetes.io/" $key) (eq $key "helm.sh/chart") -}}
{{- fail (printf "commonLabels: %s is the chart's own label (selectors use it); choose another key" $key) -}}
{{- end -}}
{{- end -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.rbac.create) -}}
{{- fail "operator.replicas > 1 needs rbac.create=true: the replicas elect a leader with a Lease the chart's Role lets them write" -}}
{{- end -}}
{{- end -}}

{{- define "kflow.labels" -}}
app.kubernetes.io/name: {{ include "kflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of a Pod template: its selector's and commonLabels. */}}
{{- define "kflow.podLabels" -}}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kflow.operatorSelector" -}}
app.kubernetes.io/name: {{ include "kflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kflow.postgresSelector" -}}
app.kubernetes.io/name: {{ include "kflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: postgresql
{{- end -}}

{{- define "kflow.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* imagePullSecrets as Kubernetes lists them ([{name: x}]); values may give names or
{name: x} objects. */}}
{{- define "kflow.pullSecretNames" -}}
{{- $names := list -}}
{{- range .Values.imagePullSecrets -}}
{{- if kindIs "string" . -}}{{- $names = append $names . -}}{{- else -}}{{- $names = append $names .name -}}{{- end -}}
{{- end -}}
{{- $names | toJson -}}
{{- end -}}
{{- define "kflow.imagePullSecrets" -}}
{{- $names := include "kflow.pullSecretNames" . | fromJsonArray -}}
{{- if $names }}
imagePullSecrets:
{{- range $names }}
  - name: {{ . }}
{{- end }}
{{- end }}
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
cluster-wide), and runner.namespaces; each gets the runner ServiceAccount (and the DSN
Secret, when the chart generates it). */}}
{{- define "kflow.runnerNamespaces" -}}
{{- if and .Values.rbac.clusterWide .Values.rbac.watchNamespaces -}}
{{- fail "rbac.watchNamespaces: a cluster-wide operator watches every namespace; list the namespaces whose runs use Pods in runner.namespaces instead" -}}
{{- end -}}
{{- $watched := list -}}
{{- if not .Values.rbac.clusterWide -}}{{- $watched = .Values.rbac.watchNamespaces -}}{{- end -}}
{{- concat (list .Release.Namespace) $watched .Values.runner.namespaces | uniq | toJson -}}
{{- end -}}

{{/* The store: bundled (a StatefulSet), cloudnativepg (a CNPG Cluster) or external. */}}
{{- define "kflow.dbMode" -}}
{{- if not (kindIs "invalid" .Values.postgresql.bundled) -}}
{{- fail (printf "postgresql.bundled is replaced by postgresql.mode: set postgresql.mode=%s (and drop postgresql.bundled)" (ternary "bundled" "external" (eq (toString .Values.postgresql.bundled) "true"))) -}}
{{- end -}}
{{- .Values.postgresql.mode -}}
{{- end -}}

{{/* The Secret with the DSN the operator and segment Pods read, and its key. */}}
{{- define "kflow.dbSecret" -}}
{{- $mode := include "kflow.dbMode" . -}}
{{- $fullname := include "kflow.fullname" . -}}
{{- if eq $mode "external" -}}
{{- if not .Values.postgresql.existingSecret -}}
{{- fail "postgresql.existingSecret: with postgresql.mode=external, name the Secret that holds your PostgreSQL's DSN" -}}
{{- end -}}
{{- .Values.postgresql.existingSecret -}}
{{- else if eq $mode "cloudnativepg" -}}
{{- if .Values.postgresql.existingSecret -}}
{{- fail "postgresql.existingSecret: with postgresql.mode=cloudnativepg, CloudNativePG makes the credentials (Secret <cluster>-app): unset postgresql.existingSecret" -}}
{{- end -}}
{{- printf "%s-postgresql-app" $fullname -}}
{{- else -}}
{{- .Values.postgresql.existingSecret | default (printf "%s-db" $fullname) -}}
{{- end -}}
{{- end -}}
{{- define "kflow.dbSecretKey" -}}
{{- $mode := include "kflow.dbMode" . -}}
{{- if eq $mode "cloudnativepg" -}}uri
{{- else if .Values.postgresql.existingSecret -}}{{ .Values.postgresql.existingSecretKey }}
{{- else -}}dsn
{{- end -}}
{{- end -}}

{{/* Whether the chart generates secrets (not GitOps-safe: under helm template, dry
runs, Argo CD and Flux, lookup finds nothing and each render makes new ones). */}}
{{- define "kflow.generatesPassword" -}}
{{- if and (eq (include "kflow.dbMode" .) "bundled") (not .Values.postgresql.existingSecret) }}true{{ end -}}
{{- end -}}
{{- define "kflow.generatesCert" -}}
{{- if and .Values.webhook.enabled (eq .Values.webhook.certificate.source "generate") }}true{{ end -}}
{{- end -}}

{{/* Generated secrets, made once per render (kept in .Values, which every template
shares) and kept across upgrades (lookup finds the live ones): a JSON object with
password, tls.crt, tls.key and ca.crt, each only when the chart generates it. */}}
{{- define "kflow.generated" -}}
{{- if not (hasKey .Values "__kflowGenerated") -}}
{{- $fullname := include "kflow.fullname" . -}}
{{- $made := dict -}}
{{- if include "kflow.generatesPassword" . -}}
{{- $live := lookup "v1" "Secret" .Release.Namespace (printf "%s-db" $fullname) -}}
{{- $password := randAlphaNum 32 -}}
{{- if and $live $live.data (hasKey $live.data "password") -}}
{{- $password = index $live.data "password" | b64dec -}}
{{- end -}}
{{- $_ := set $made "password" $password -}}
{{- end -}}
{{- if include "kflow.generatesCert" . -}}
{{- $service := printf "%s-webhook" $fullname -}}
{{- $live := lookup "v1" "Secret" .Release.Namespace (printf "%s-webhook-cert" $fullname) -}}
{{- if and $live $live.data -}}
{{- range $k := list "tls.crt" "tls.key" "ca.crt" -}}
{{- $_ := set $made $k (index $live.data $k) -}}
{{- end -}}
{{- else -}}
{{- $ca := genCA (printf "%s-ca" $fullname) 3650 -}}
{{- $dns := list $service (printf "%s.%s" $service .Release.Namespace) (printf "%s.%s.svc" $service .Release.Namespace) -}}
{{- $cert := genSignedCert (printf "%s.%s.svc" $service .Release.Namespace) nil $dns 3650 $ca -}}
{{- $_ := set $made "tls.crt" ($cert.Cert | b64enc) -}}
{{- $_ := set $made "tls.key" ($cert.Key | b64enc) -}}
{{- $_ := set $made "ca.crt" ($ca.Cert | b64enc) -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values "__kflowGenerated" $made -}}
{{- end -}}
{{- index .Values "__kflowGenerated" | toJson -}}
{{- end -}}

{{/* The bundled PostgreSQL's DSN for a generated password. */}}
{{- define "kflow.generatedDsn" -}}
{{- $password := (include "kflow.generated" . | fromJson).password -}}
{{- $host := printf "%s-postgresql.%s.svc" (include "kflow.fullname" .) .Release.Namespace -}}
{{- printf "postgresql://kflow:%s@%s:5432/kflow" $password $host -}}
{{- end -}}

{{/* The webhook certificate's Secret, by source. */}}
{{- define "kflow.webhookCertSecret" -}}
{{- $source := .Values.webhook.certificate.source -}}
{{- if eq $source "existingSecret" -}}
{{- required "webhook.certificate.existingSecret: with webhook.certificate.source=existingSecret, name a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt" .Values.webhook.certificate.existingSecret -}}
{{- else -}}
{{- printf "%s-webhook-cert" (include "kflow.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The restricted Pod Security Standard, for every Pod of the chart (values may
override it: operator.containerSecurityContext, postgresql.containerSecurityContext). */}}
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
