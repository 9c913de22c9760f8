{{/* Names, labels and the shared pieces of the worker, the matcher and the provisioning Job. */}}

{{- define "snowtrap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "snowtrap.fullname" -}}
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

{{- define "snowtrap.worker.fullname" -}}
{{- printf "%s-worker" (include "snowtrap.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "snowtrap.matcher.fullname" -}}
{{- printf "%s-matcher" (include "snowtrap.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "snowtrap.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of one component (worker, matcher): called with (dict "ctx" $ "component" "matcher").
snowtrap.labels / snowtrap.selectorLabels are the worker's, snowtrap.matcher.* the matcher's.
*/}}
{{- define "snowtrap.componentLabels" -}}
helm.sh/chart: {{ include "snowtrap.chart" .ctx }}
{{ include "snowtrap.componentSelectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: snowtrap
{{- end }}

{{- define "snowtrap.componentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "snowtrap.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "snowtrap.labels" -}}
{{ include "snowtrap.componentLabels" (dict "ctx" . "component" "worker") }}
{{- end }}

{{- define "snowtrap.selectorLabels" -}}
{{ include "snowtrap.componentSelectorLabels" (dict "ctx" . "component" "worker") }}
{{- end }}

{{- define "snowtrap.matcher.labels" -}}
{{ include "snowtrap.componentLabels" (dict "ctx" . "component" "matcher") }}
{{- end }}

{{- define "snowtrap.matcher.selectorLabels" -}}
{{ include "snowtrap.componentSelectorLabels" (dict "ctx" . "component" "matcher") }}
{{- end }}

{{- define "snowtrap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "snowtrap.worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The worker image: the GPU variant carries gpu.imageTagSuffix. */}}
{{- define "snowtrap.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.gpu.enabled }}
{{- $tag = printf "%s%s" $tag .Values.gpu.imageTagSuffix }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* The CPU image (no gpu suffix): the topics Job's, and the matcher's by default. */}}
{{- define "snowtrap.cpuImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The matcher image: the chart's CPU image unless matcher.image overrides it. */}}
{{- define "snowtrap.matcher.image" -}}
{{- $repository := default .Values.image.repository .Values.matcher.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.matcher.image.tag }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/* Where the matcher's SQLite database lives: a file on its PersistentVolumeClaim. */}}
{{- define "snowtrap.matcher.dbPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.matcher.persistence.mountPath) .Values.matcher.persistence.dbFile }}
{{- end }}

{{- define "snowtrap.sasl" -}}
{{- if hasPrefix "SASL" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{- define "snowtrap.tls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{/* Checks that fail the render with a message an operator can act on. */}}
{{- define "snowtrap.validate" -}}
{{- if not .Values.kafka.bootstrapServers }}
{{- fail "kafka.bootstrapServers is required: the cluster's bootstrap servers (host:port,...)" }}
{{- end }}
{{- if not (has .Values.kafka.securityProtocol (list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL")) }}
{{- fail "kafka.securityProtocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL" }}
{{- end }}
{{- if and (include "snowtrap.sasl" .) (not .Values.kafka.sasl.existingSecret) }}
{{- fail "kafka.sasl.existingSecret is required with SASL: the name of a Secret holding the password (credentials never go in values)" }}
{{- end }}
{{- if and (eq .Values.bundle.source "pvc") (not .Values.bundle.pvc.claimName) }}
{{- fail "bundle.pvc.claimName is required when bundle.source is pvc" }}
{{- end }}
{{- if and (eq .Values.bundle.source "initContainer") (not .Values.bundle.initContainer.image) }}
{{- fail "bundle.initContainer.image is required when bundle.source is initContainer" }}
{{- end }}
{{- if not (has .Values.bundle.source (list "image" "pvc" "initContainer")) }}
{{- fail "bundle.source must be image, pvc or initContainer" }}
{{- end }}
{{- if not (has .Values.topics.provisioning.mode (list "job" "strimzi" "none")) }}
{{- fail "topics.provisioning.mode must be job, strimzi or none" }}
{{- end }}
{{- if and (eq .Values.topics.provisioning.mode "strimzi") (not .Values.topics.provisioning.strimziCluster) }}
{{- fail "topics.provisioning.strimziCluster is required when topics.provisioning.mode is strimzi" }}
{{- end }}
{{- $kafka := list "bootstrap_servers" "security_protocol" "sasl_mechanism" "sasl_username" "sasl_password" "ssl_cafile" "ssl_certfile" "ssl_keyfile" "topics" "group_id" "metrics_port" "metrics_host" "create_topics" }}
{{- include "snowtrap.checkSettings" (dict "settings" .Values.worker.settings "path" "worker.settings" "reserved" (append $kafka "bundle_dir") "from" "kafka, topics, bundle, worker.metricsPort") }}
{{- if .Values.matcher.enabled }}
{{- /* One writer: the SQLite database takes no second matcher (see matcher.replicas). */}}
{{- if gt (int .Values.matcher.replicas) 1 }}
{{- fail (printf "matcher.replicas is %v but must be 0 or 1: the matcher's SQLite database (%s) allows one writer, so exactly one matcher runs (a StatefulSet of one pod, never autoscaled); give it more CPU (matcher.resources) instead" .Values.matcher.replicas (include "snowtrap.matcher.dbPath" .)) }}
{{- end }}
{{- if lt (int .Values.matcher.replicas) 0 }}
{{- fail "matcher.replicas must be 0 or 1" }}
{{- end }}
{{- if eq .Values.matcher.consumerGroup .Values.kafka.consumerGroup }}
{{- fail "matcher.consumerGroup must differ from kafka.consumerGroup (the workers' group)" }}
{{- end }}
{{- include "snowtrap.checkSettings" (dict "settings" .Values.matcher.settings "path" "matcher.settings" "reserved" (concat $kafka (list "db_path" "client_id")) "from" "kafka, topics, matcher.persistence, matcher.consumerGroup, matcher.metricsPort") }}
{{- end }}
{{- end }}

{{/* A process's settings map must not set what the chart sets from its own values. */}}
{{- define "snowtrap.checkSettings" -}}
{{- $check := . }}
{{- range $key, $_ := .settings }}
{{- if has $key $check.reserved }}
{{- fail (printf "%s.%s is set by the chart from its own values (%s); set it there" $check.path $key $check.from) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A process's settings map as SNOWTRAP_<FIELD> ConfigMap data (lists and maps as JSON, nulls
left out), indented by the caller.
*/}}
{{- define "snowtrap.settingsData" -}}
{{- range $key, $value := . }}
{{- if not (kindIs "invalid" $value) }}
SNOWTRAP_{{ upper $key }}: {{ if or (kindIs "slice" $value) (kindIs "map" $value) }}{{ toJson $value | quote }}{{ else }}{{ toString $value | quote }}{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The env of a long-running stream process (worker, matcher): the Kafka connection, the pod
name as Kafka client id, then the component's extraEnv. Called with
(dict "ctx" $ "extraEnv" .Values.worker.extraEnv).
*/}}
{{- define "snowtrap.processEnv" -}}
{{ include "snowtrap.kafkaEnv" .ctx }}
- name: SNOWTRAP_CLIENT_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- with .extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Kafka connection env shared by the worker, the matcher and the provisioning Job: plain values, the SASL
credentials from the existing Secret, the TLS files' paths (mounted by snowtrap.kafkaVolumeMounts).
*/}}
{{- define "snowtrap.kafkaEnv" -}}
- name: SNOWTRAP_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: SNOWTRAP_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- range $role, $name := .Values.topics.names }}
- name: SNOWTRAP_TOPICS__{{ upper $role }}
  value: {{ $name | quote }}
{{- end }}
{{- if include "snowtrap.sasl" . }}
- name: SNOWTRAP_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
{{- if .Values.kafka.sasl.username }}
- name: SNOWTRAP_SASL_USERNAME
  value: {{ .Values.kafka.sasl.username | quote }}
{{- else }}
- name: SNOWTRAP_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.usernameKey }}
{{- end }}
- name: SNOWTRAP_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- if and (include "snowtrap.tls" .) .Values.kafka.tls.caSecret }}
- name: SNOWTRAP_SSL_CAFILE
  value: /etc/snowtrap/kafka-ca/{{ .Values.kafka.tls.caKey }}
{{- end }}
{{- if and (include "snowtrap.tls" .) .Values.kafka.tls.clientCertSecret }}
- name: SNOWTRAP_SSL_CERTFILE
  value: /etc/snowtrap/kafka-client/{{ .Values.kafka.tls.certKey }}
- name: SNOWTRAP_SSL_KEYFILE
  value: /etc/snowtrap/kafka-client/{{ .Values.kafka.tls.keyKey }}
{{- end }}
{{- end }}

{{- define "snowtrap.kafkaVolumeMounts" -}}
{{- if and (include "snowtrap.tls" .) .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/snowtrap/kafka-ca
  readOnly: true
{{- end }}
{{- if and (include "snowtrap.tls" .) .Values.kafka.tls.clientCertSecret }}
- name: kafka-client
  mountPath: /etc/snowtrap/kafka-client
  readOnly: true
{{- end }}
{{- end }}

{{- define "snowtrap.kafkaVolumes" -}}
{{- if and (include "snowtrap.tls" .) .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
    items:
      - key: {{ .Values.kafka.tls.caKey }}
        path: {{ .Values.kafka.tls.caKey }}
{{- end }}
{{- if and (include "snowtrap.tls" .) .Values.kafka.tls.clientCertSecret }}
- name: kafka-client
  secret:
    secretName: {{ .Values.kafka.tls.clientCertSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.kafka.tls.certKey }}
        path: {{ .Values.kafka.tls.certKey }}
      - key: {{ .Values.kafka.tls.keyKey }}
        path: {{ .Values.kafka.tls.keyKey }}
{{- end }}
{{- end }}

{{/* The autoscaler's ceiling: never more workers than partitions of the images topic. */}}
{{- define "snowtrap.maxReplicas" -}}
{{- min (int .Values.autoscaling.maxReplicas) (int .Values.topics.specs.images.partitions) }}
{{- end }}

{{/* Partition counts per topic role, as SNOWTRAP_PARTITIONS for `snowtrap topics`. */}}
{{- define "snowtrap.partitionsJson" -}}
{{- $out := dict }}
{{- range $role, $spec := .Values.topics.specs }}
{{- $_ := set $out $role (int $spec.partitions) }}
{{- end }}
{{- toJson $out }}
{{- end }}
