{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "tj.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already contains the chart name.
Truncated to 50 characters so that suffixes like "-redis" and "-metrics" stay within 63.
*/}}
{{- define "tj.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tj.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "tj.labels" -}}
helm.sh/chart: {{ include "tj.chart" . }}
app.kubernetes.io/name: {{ include "tj.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trainingjob-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of one component ("operator" or "redis"): call with (dict "ctx" . "component" "operator").
*/}}
{{- define "tj.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tj.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tj.componentLabels" -}}
{{ include "tj.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tj.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tj.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tj.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{/*
Default trainer image: an explicit tag wins; otherwise appVersion, with the CUDA suffix when GPUs are on.
*/}}
{{- define "tj.trainerImage" -}}
{{- $tag := .Values.trainer.image.tag }}
{{- if not $tag }}
{{- $tag = .Chart.AppVersion }}
{{- if .Values.trainer.gpu.enabled }}
{{- $tag = printf "%s%s" $tag .Values.trainer.gpu.tagSuffix }}
{{- end }}
{{- end }}
{{- printf "%s:%s" .Values.trainer.image.repository $tag }}
{{- end }}

{{/*
Default trainer RoleSpec fragment (camelCase, as in a TrainingJob's spec.replicas.trainer) as JSON.
*/}}
{{- define "tj.trainerRoleDefaults" -}}
{{- $resources := deepCopy (default dict .Values.trainer.resources) }}
{{- $tolerations := list }}
{{- range .Values.trainer.tolerations }}{{ $tolerations = append $tolerations . }}{{ end }}
{{- if .Values.trainer.gpu.enabled }}
{{- $limits := deepCopy (default dict $resources.limits) }}
{{- $_ := set $limits .Values.trainer.gpu.resourceName (int .Values.trainer.gpu.count) }}
{{- $_ := set $resources "limits" $limits }}
{{- range .Values.trainer.gpu.tolerations }}{{ $tolerations = append $tolerations . }}{{ end }}
{{- end }}
{{- $role := dict "resources" $resources "nodeSelector" (default dict .Values.trainer.nodeSelector) "tolerations" $tolerations }}
{{- toJson $role }}
{{- end }}

{{/*
True (non-empty) when the chart runs its own Redis.
*/}}
{{- define "tj.bundledRedis" -}}
{{- if not (or .Values.redis.external.url .Values.redis.external.existingSecret) }}true{{ end }}
{{- end }}

{{- define "tj.redisName" -}}
{{- printf "%s-redis" (include "tj.fullname" .) }}
{{- end }}

{{/*
URL of the bundled Redis, reachable from any namespace.
*/}}
{{- define "tj.bundledRedisUrl" -}}
{{- printf "redis://%s.%s.svc:6379/0" (include "tj.redisName" .) .Release.Namespace }}
{{- end }}

{{- define "tj.peeringName" -}}
{{- default (include "tj.fullname" .) .Values.operator.peering.name }}
{{- end }}

{{- define "tj.clusterWide" -}}
{{- if not .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
Fail early on settings that cannot work.
*/}}
{{- define "tj.validate" -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.peering.enabled) }}
{{- fail "operator.replicas > 1 needs operator.peering.enabled=true: standalone kopf replicas would all handle every TrainingJob" }}
{{- end }}
{{- with .Values.redis.external.url }}
{{- if not (or (hasPrefix "redis://" .) (hasPrefix "rediss://" .) (hasPrefix "unix://" .)) }}
{{- fail (printf "redis.external.url must start with redis://, rediss:// or unix://, got %q" .) }}
{{- end }}
{{- end }}
{{- end }}
