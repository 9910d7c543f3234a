{{/* Names and labels. */}}
{{- define "replicator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "replicator.fullname" -}}
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

{{- define "replicator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "replicator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "replicator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "replicator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: replicator
{{- end -}}

{{/* The job label of this release's series (the ServiceMonitor sets it; the rules, the KEDA
trigger and the dashboard select on it): serviceMonitor.job, or <namespace>/<full name>. */}}
{{- define "replicator.job" -}}
{{- default (printf "%s/%s" .Release.Namespace (include "replicator.fullname" .)) .Values.serviceMonitor.job -}}
{{- end -}}

{{- define "replicator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "replicator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "replicator.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* A setting's value as its environment variable expects it: lists joined with commas,
objects as JSON, whole numbers without an exponent. */}}
{{- define "replicator.envValue" -}}
{{- $v := . -}}
{{- if kindIs "slice" $v -}}
{{- join "," $v -}}
{{- else if kindIs "map" $v -}}
{{- toJson $v -}}
{{- else if kindIs "float64" $v -}}
{{- if eq $v (floor $v) -}}{{- int64 $v -}}{{- else -}}{{- $v -}}{{- end -}}
{{- else -}}
{{- $v -}}
{{- end -}}
{{- end -}}

{{/* The settings' metrics port and shutdown bound, with the model's defaults (9108, 30 s)
when unset or null. */}}
{{- define "replicator.metricsPort" -}}
{{- int64 (.Values.config.metrics_port | default 9108) -}}
{{- end -}}

{{- define "replicator.shutdownTimeout" -}}
{{- float64 (.Values.config.shutdown_timeout_s | default 30.0) -}}
{{- end -}}

{{- define "replicator.terminationGrace" -}}
{{- $shutdown := include "replicator.shutdownTimeout" . | float64 -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add (ceil $shutdown | int64) 15 -}}
{{- else -}}
{{- $grace := .Values.terminationGracePeriodSeconds | int64 -}}
{{- if le (float64 $grace) $shutdown -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be longer than config.shutdown_timeout_s (%v): the pod would be killed while it drains" $grace $shutdown) -}}
{{- end -}}
{{- $grace -}}
{{- end -}}
{{- end -}}

{{/* The stores, as a list, whether config.stores is a list or a comma-separated string. */}}
{{- define "replicator.stores" -}}
{{- $stores := .Values.config.stores | default (list "s3" "azure") -}}
{{- if kindIs "string" $stores -}}{{- $stores = splitList "," $stores -}}{{- end -}}
{{- range $stores }}{{ trim . }}{{ "\n" }}{{ end -}}
{{- end -}}

{{/* Checks that no values.schema.json can express. */}}
{{- define "replicator.validate" -}}
{{- $v := .Values -}}
{{- if gt (int64 $v.replicaCount) (int64 $v.topicPartitions) -}}
{{- fail (printf "replicaCount (%v) is above topicPartitions (%v): a partition is owned by one replica at a time, the extra replicas would idle" $v.replicaCount $v.topicPartitions) -}}
{{- end -}}
{{- if and $v.keda.enabled (gt (int64 $v.keda.maxReplicaCount) (int64 $v.topicPartitions)) -}}
{{- fail (printf "keda.maxReplicaCount (%v) is above topicPartitions (%v)" $v.keda.maxReplicaCount $v.topicPartitions) -}}
{{- end -}}
{{- if and $v.keda.enabled (gt (int64 $v.keda.minReplicaCount) (int64 $v.keda.maxReplicaCount)) -}}
{{- fail "keda.minReplicaCount is above keda.maxReplicaCount" -}}
{{- end -}}
{{- $stores := include "replicator.stores" . | trim | splitList "\n" -}}
{{- if and (has "s3" $stores) (not $v.secrets.s3.existingSecret) -}}
{{- fail "config.stores has s3: set secrets.s3.existingSecret (a Secret with the S3 access key and secret key)" -}}
{{- end -}}
{{- if and (has "azure" $stores) (not $v.secrets.azure.existingSecret) -}}
{{- fail "config.stores has azure: set secrets.azure.existingSecret (a Secret with the connection string or SAS)" -}}
{{- end -}}
{{- if and $v.config.kafka_sasl_mechanism (not $v.secrets.kafkaSasl.existingSecret) -}}
{{- fail "config.kafka_sasl_mechanism is set: set secrets.kafkaSasl.existingSecret (a Secret with the SASL password)" -}}
{{- end -}}
{{- if and $v.config.kafka_sasl_mechanism (not $v.secrets.kafkaSasl.usernameKey) (not $v.config.kafka_sasl_username) -}}
{{- fail "config.kafka_sasl_mechanism is set: set config.kafka_sasl_username or secrets.kafkaSasl.usernameKey" -}}
{{- end -}}
{{- if and $v.secrets.kafkaSasl.usernameKey $v.config.kafka_sasl_username -}}
{{- fail "the SASL user name is given twice: config.kafka_sasl_username and secrets.kafkaSasl.usernameKey" -}}
{{- end -}}
{{- range $name, $setting := dict "kafkaCa" "kafka_ssl_ca_location" "s3Ca" "s3_ca_bundle" "azureCa" "azure_ca_bundle" "schemaRegistryCa" "schema_registry_ca_location" -}}
{{- $ca := index $v.tls $name -}}
{{- if and $ca.secretName $ca.configMapName -}}
{{- fail (printf "tls.%s: set secretName or configMapName, not both" $name) -}}
{{- end -}}
{{- if and (or $ca.secretName $ca.configMapName) (hasKey $v.config $setting) -}}
{{- fail (printf "tls.%s mounts a CA and sets config.%s itself: remove config.%s" $name $setting $setting) -}}
{{- end -}}
{{- end -}}
{{- end -}}
