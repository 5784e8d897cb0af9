{{/* Chart name, possibly overridden. */}}
{{- define "runpolicy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, suffixed with the chart name unless it already contains it. */}}
{{- define "runpolicy.fullname" -}}
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

{{- define "runpolicy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "runpolicy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: runpolicy
{{- end }}

{{- define "runpolicy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "runpolicy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "runpolicy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "runpolicy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Cluster-scoped names carry the release namespace too: two releases in two namespaces must not collide. */}}
{{- define "runpolicy.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "runpolicy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* image renders repository:tag or repository@digest; the tag defaults to the chart's appVersion. */}}
{{- define "runpolicy.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .appVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* seconds turns a Prometheus duration such as 1h30m or 1d (values.schema.json: units s, m, h, d, w) into seconds. */}}
{{- define "runpolicy.seconds" -}}
{{- $units := dict "s" 1 "m" 60 "h" 3600 "d" 86400 "w" 604800 }}
{{- $total := 0 }}
{{- range regexFindAll "[0-9]+[smhdw]" . -1 }}
{{- $n := regexFind "^[0-9]+" . }}
{{- $total = add $total (mul (atoi $n) (get $units (trimPrefix $n .))) }}
{{- end }}
{{- $total }}
{{- end }}

{{/* KubeVirt's namespace: the value, else the namespace of the cluster's KubeVirt CR (lookup answers nothing under
helm template), else kubevirt. */}}
{{- define "runpolicy.kubevirtNamespace" -}}
{{- $ns := .Values.kubevirt.namespace }}
{{- if not $ns }}
{{- range (lookup "kubevirt.io/v1" "KubeVirt" "" "").items }}
{{- $ns = .metadata.namespace }}
{{- end }}
{{- end }}
{{- default "kubevirt" $ns }}
{{- end }}

{{/* The user names of KubeVirt's virt-controller and virt-api. */}}
{{- define "runpolicy.virtController" -}}
{{- printf "system:serviceaccount:%s:%s" (include "runpolicy.kubevirtNamespace" .) .Values.kubevirt.controllerServiceAccount }}
{{- end }}
{{- define "runpolicy.virtAPI" -}}
{{- printf "system:serviceaccount:%s:%s" (include "runpolicy.kubevirtNamespace" .) .Values.kubevirt.apiServiceAccount }}
{{- end }}

{{/* The garbage collector's user names: kube-controller-manager's own, or its service account with
--use-service-account-credentials. It removes owner references of orphaned dependents. */}}
{{- define "runpolicy.garbageCollectors" -}}
["system:kube-controller-manager", "system:serviceaccount:kube-system:generic-garbage-collector"]
{{- end }}

{{/* CEL: the object before the request has a controller ownerReference to a runpolicy VM. */}}
{{- define "runpolicy.controlledByRunpolicy" -}}
oldObject.metadata.?ownerReferences.orValue([]).exists(r, r.apiVersion.startsWith('runpolicy.io/') && r.kind == 'VirtualMachine' && r.?controller.orValue(false))
{{- end }}
