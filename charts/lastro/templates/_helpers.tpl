{{/*
Names and labels, Bitnami-style: every name is capped at 63 characters (a DNS label),
selectors use only name + instance (+ component, since the chart runs several).
*/}}

{{- define "lastro.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lastro.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lastro.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lastro.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The name of one component's objects: <fullname>-<component>, capped at 63 by
shortening the prefix, so that two components never truncate to the same name. */}}
{{- define "lastro.componentName" -}}
{{- $prefix := include "lastro.fullname" .context | trunc (int (sub 62 (len .component))) | trimSuffix "-" -}}
{{- printf "%s-%s" $prefix .component -}}
{{- end -}}

{{- define "lastro.matchLabels" -}}
app.kubernetes.io/name: {{ include "lastro.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lastro.labels" -}}
{{ include "lastro.matchLabels" . }}
helm.sh/chart: {{ include "lastro.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lastro
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector of one component: {context, component}. */}}
{{- define "lastro.componentMatchLabels" -}}
{{ include "lastro.matchLabels" .context }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "lastro.componentLabels" -}}
{{ include "lastro.labels" .context }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "lastro.annotations" -}}
{{- with .Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "lastro.image" -}}
{{- $registry := default .Values.image.registry .Values.global.imageRegistry -}}
{{- $repository := printf "%s/%s" $registry .Values.image.repository | trimPrefix "/" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "lastro.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "lastro.tlsSecret" -}}
{{- default (printf "%s-tls" (include "lastro.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{/* In-cluster HTTPS address of a service: {context, component}. */}}
{{- define "lastro.serviceURL" -}}
{{- $service := index .context.Values.services .component -}}
{{- printf "https://%s.%s.svc.%s:%d" (include "lastro.componentName" .) (include "lastro.namespace" .context) .context.Values.clusterDomain (int $service.port) -}}
{{- end -}}

{{- define "lastro.jwtIssuer" -}}
{{- default (printf "https://%s" .Values.ingress.hostname) .Values.config.jwtIssuer -}}
{{- end -}}

{{/* The services that call `component` (from every enabled service's `calls`). */}}
{{- define "lastro.callers" -}}
{{- $callers := list -}}
{{- range $name, $service := .context.Values.services -}}
{{- if and $service.enabled (has $.component ($service.calls | default list)) -}}
{{- $callers = append $callers $name -}}
{{- end -}}
{{- end -}}
{{- toJson $callers -}}
{{- end -}}

{{/* Environment of every Lastro process, the operator included: where things are. */}}
{{- define "lastro.env.common" -}}
- name: LASTRO_ENV
  value: {{ .Values.config.environment | quote }}
- name: LASTRO_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
- name: LASTRO_DEV_DIR
  value: /tmp/lastro
- name: LASTRO_CA_FILE
  value: /etc/lastro/ca/ca.crt
- name: LASTRO_JWT_ISSUER
  value: {{ include "lastro.jwtIssuer" . | quote }}
{{- if .Values.services.identity.enabled }}
- name: LASTRO_JWKS_URL
  value: {{ printf "%s/.well-known/jwks.json" (include "lastro.serviceURL" (dict "context" . "component" "identity")) | quote }}
{{- end }}
{{- range $name, $service := .Values.services }}
{{- if and $service.enabled $service.port (ne $service.kind "worker") }}
- name: {{ printf "LASTRO_%s_URL" ($name | upper | replace "-" "_") }}
  value: {{ include "lastro.serviceURL" (dict "context" $ "component" $name) | quote }}
{{- end }}
{{- end }}
{{- with .Values.config.otlpEndpoint }}
- name: LASTRO_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- /* OpenTelemetry's own variables: a trace is kept or dropped where it starts. */}}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .Values.config.traceSampleRatio | toString | quote }}
{{- with .Values.config.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* What the services that hold data get on top: dependencies, their secrets, TLS. */}}
{{- define "lastro.env" -}}
{{ include "lastro.env.common" . }}
- name: LASTRO_BIND_HOST
  value: "0.0.0.0"
- name: LASTRO_PG_HOST
  value: {{ .Values.database.host | quote }}
- name: LASTRO_PG_PORT
  value: {{ .Values.database.port | quote }}
- name: LASTRO_PG_DATABASE
  value: {{ .Values.database.name | quote }}
- name: LASTRO_PG_USER
  value: {{ .Values.database.user | quote }}
- name: LASTRO_PG_SSL
  value: {{ .Values.database.ssl | quote }}
- name: LASTRO_PG_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret is required" .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretPasswordKey }}
- name: LASTRO_REDIS_HOST
  value: {{ .Values.redis.host | quote }}
- name: LASTRO_REDIS_PORT
  value: {{ .Values.redis.port | quote }}
- name: LASTRO_KAFKA_BOOTSTRAP
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: LASTRO_VAULT_ADDR
  value: {{ .Values.vault.address | quote }}
- name: LASTRO_VAULT_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ required "vault.auth.existingSecret is required" .Values.vault.auth.existingSecret }}
      key: {{ .Values.vault.auth.existingSecretTokenKey }}
- name: LASTRO_EVENTS_KEY_NAME
  value: {{ .Values.vault.eventsKeyName | quote }}
- name: LASTRO_AUDIT_KEY_NAME
  value: {{ .Values.vault.auditKeyName | quote }}
- name: LASTRO_RATE_LIMIT_PER_MINUTE
  value: {{ .Values.config.rateLimitPerMinute | quote }}
- name: LASTRO_TLS_CERT_FILE
  value: /etc/lastro/tls/tls.crt
- name: LASTRO_TLS_KEY_FILE
  value: /etc/lastro/tls/tls.key
{{- end -}}

{{- define "lastro.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
- name: tls
  secret:
    secretName: {{ include "lastro.tlsSecret" . }}
    defaultMode: 0400
    items:
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
{{ include "lastro.caVolume" . }}
{{- end -}}

{{- define "lastro.caVolume" -}}
- name: ca
  secret:
    secretName: {{ default (include "lastro.tlsSecret" .) .Values.tls.caExistingSecret }}
    items:
      - {key: ca.crt, path: ca.crt}
{{- end -}}

{{- define "lastro.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: tls
  mountPath: /etc/lastro/tls
  readOnly: true
- name: ca
  mountPath: /etc/lastro/ca
  readOnly: true
{{- end -}}

{{/* Scheduling and security shared by every pod: {context, component}. */}}
{{- define "lastro.podSpecCommon" -}}
{{- $ := .context -}}
{{- include "lastro.imagePullSecrets" $ }}
securityContext:
  {{- toYaml $.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ $.Values.terminationGracePeriodSeconds }}
{{- with $.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $.Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
affinity:
{{- if $.Values.affinity }}
  {{- toYaml $.Values.affinity | nindent 2 }}
{{- else }}
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "lastro.componentMatchLabels" . | nindent 14 }}
{{- end }}
{{- end -}}
