{{/* Name of the chart, or nameOverride. */}}
{{- define "scaivault-csi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of every resource: fullnameOverride, else the chart name. One release per cluster. */}}
{{- define "scaivault-csi.fullname" -}}
{{- default (include "scaivault-csi.name" .) .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "scaivault-csi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scaivault-csi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "scaivault-csi.labels" -}}
{{ include "scaivault-csi.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "scaivault-csi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "scaivault-csi.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}
