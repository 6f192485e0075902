{{/* Chart name, truncated to a DNS label. */}}
{{- define "tierserve.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name: the release name, or <release>-tierserve. */}}
{{- define "tierserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "tierserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tierserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tierserve
{{- end }}

{{- define "tierserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tierserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tierserve.operatorServiceAccount" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-operator" (include "tierserve.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tierserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The watched namespaces (JSON list): `watchNamespaces`, else the release namespace alone.
There is no all-namespaces mode: every namespaced grant is a Role in one of these, and the
system namespaces are refused, so the operator never gets a right in kube-system. */}}
{{- define "tierserve.watchedNamespaces" -}}
{{- $watched := .Values.watchNamespaces | default (list .Release.Namespace) }}
{{- range $watched }}
{{- if has . (list "kube-system" "kube-public" "kube-node-lease") }}
{{- fail (printf "watchNamespaces: %s is refused; the operator is never granted rights in a system namespace (list the namespaces that hold PrunedModels)" .) }}
{{- end }}
{{- end }}
{{- toJson $watched }}
{{- end }}

{{/* The namespaced rules of the operator (contract 5), granted by a Role per watched namespace.
Secrets: `get` only, to check that a Secret named by spec.model.hfTokenSecret carries
operator.hfTokenSecretLabel; the operator asks for PartialObjectMetadata and never reads data. */}}
{{- define "tierserve.namespacedRules" -}}
- apiGroups: ["tierserve.io"]
  resources: ["prunedmodels"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["tierserve.io"]
  resources: ["prunedmodels/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["ray.io"]
  resources: ["rayjobs", "rayservices"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}

{{/* Cluster-scoped reads the operator needs in both modes. */}}
{{- define "tierserve.clusterRules" -}}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}
