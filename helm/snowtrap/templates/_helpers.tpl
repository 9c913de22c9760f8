{{/* Names, labels and the shared pieces of the worker and the provisioning Job. */}}

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

{{- define "snowtrap.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "snowtrap.labels" -}}
helm.sh/chart: {{ include "snowtrap.chart" . }}
{{ include "snowtrap.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: snowtrap
{{- end }}

{{- define "snowtrap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "snowtrap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
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
{{- $reserved := list "bootstrap_servers" "security_protocol" "sasl_mechanism" "sasl_username" "sasl_password" "ssl_cafile" "ssl_certfile" "ssl_keyfile" "topics" "bundle_dir" "group_id" "metrics_port" "metrics_host" "create_topics" }}
{{- range $key, $_ := .Values.worker.settings }}
{{- if has $key $reserved }}
{{- fail (printf "worker.settings.%s is set by the chart from its own values (kafka, topics, bundle, worker.metricsPort); set it there" $key) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Kafka connection env shared by the worker and the provisioning Job: plain values, the SASL
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
