{{- define "podscope.labels" -}}
app.kubernetes.io/name: podscope
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "podscope.selector" -}}
app.kubernetes.io/name: podscope
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
