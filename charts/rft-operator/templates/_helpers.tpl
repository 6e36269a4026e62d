{{/* The chart name, overridable. */}}
{{- define "rft-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object name: the release name, with the chart name unless one holds the other
     (release "rft" of chart "rft-operator" gives "rft-operator", not "rft-rft-operator"). */}}
{{- define "rft-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else if hasPrefix (printf "%s-" .Release.Name) $name }}
{{- $name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rft-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "rft-operator.labels" -}}
helm.sh/chart: {{ include "rft-operator.chart" . }}
{{ include "rft-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rft
{{- end }}

{{/* What the Deployment and the metrics Service select the operator pod by (immutable once installed). */}}
{{- define "rft-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rft-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "rft-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rft-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: the digest wins over the tag; the tag defaults to the appVersion. */}}
{{- define "rft-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The namespaces of namespaced mode: the listed ones, or the release namespace. */}}
{{- define "rft-operator.watchNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- join "," (uniq .Values.watchNamespaces) }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* The image of veRL job pods: jobDefaults.verlImage, else the operator's repository at <appVersion>-verl
(the release workflow pushes both tags from one version). */}}
{{- define "rft-operator.verlImage" -}}
{{- if .Values.jobDefaults.verlImage }}
{{- .Values.jobDefaults.verlImage }}
{{- else }}
{{- printf "%s:%s-verl" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The namespaces of the job pods' NetworkPolicy. */}}
{{- define "rft-operator.networkPolicyNamespaces" -}}
{{- if .Values.networkPolicy.namespaces }}
{{- join "," (uniq .Values.networkPolicy.namespaces) }}
{{- else }}
{{- include "rft-operator.watchNamespaces" . }}
{{- end }}
{{- end }}
