{{/*
Shared pieces. Object names are fixed, not prefixed with the release name: RBAC names the
Secret and the MutatingWebhookConfiguration by name (resourceNames), the serving certificate
names the Service, and the PriorityClasses are cluster-wide, so one vramguard per cluster.
*/}}

{{/* Helm's own labels, on every object: what `helm` and people use to find the release. */}}
{{- define "vramguard.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
metadata.labels and metadata.annotations of one object. Argument: a dict with
  ctx     the root context
  labels  the object's own labels (selectors use some: they win over everything else)
  base    true for the objects of manifests/base, which kustomize labels with part-of and
          version (the components' objects carry their own labels only)
  annotations  the object's own annotations (optional)
commonLabels and commonAnnotations come last: they cannot replace a label a selector needs.
*/}}
{{- define "vramguard.metadata" -}}
{{- $ctx := .ctx -}}
{{- $labels := deepCopy (.labels | default dict) -}}
{{- if .base }}
{{- $labels = merge $labels (dict "app.kubernetes.io/part-of" "vramguard" "app.kubernetes.io/version" $ctx.Chart.AppVersion) -}}
{{- end }}
{{- $labels = merge $labels (include "vramguard.helmLabels" $ctx | fromYaml) (deepCopy $ctx.Values.commonLabels) -}}
labels:
  {{- toYaml $labels | nindent 2 }}
{{- $annotations := merge (deepCopy (.annotations | default dict)) (deepCopy $ctx.Values.commonAnnotations) }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A pod template's metadata: the selector labels first, then podLabels/podAnnotations. */}}
{{- define "vramguard.podMetadata" -}}
{{- $ctx := .ctx -}}
{{- $labels := merge (deepCopy .labels) (deepCopy $ctx.Values.podLabels) -}}
labels:
  {{- toYaml $labels | nindent 2 }}
{{- $annotations := merge (deepCopy (.annotations | default dict)) (deepCopy $ctx.Values.podAnnotations) }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; the tag defaults to appVersion. */}}
{{- define "vramguard.image" -}}
{{- $image := .image -}}
{{- $ref := $image.repository -}}
{{- $tag := $image.tag | default .ctx.Chart.AppVersion -}}
{{- if $tag }}{{ $ref = printf "%s:%s" $ref $tag }}{{ end -}}
{{- if $image.digest }}{{ $ref = printf "%s@%s" $ref $image.digest }}{{ end -}}
{{- $ref -}}
{{- end }}

{{/* imagePullSecrets of a pod spec, when there are any. */}}
{{- define "vramguard.pullSecrets" -}}
{{- with .Values.images.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
nodeSelector, tolerations and affinity of a pod spec, from one workload's values; priorityClassName
too. Argument: the workload's values.
*/}}
{{- define "vramguard.placement" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The policy file as it lands in its ConfigMap. */}}
{{- define "vramguard.policyFile" -}}
{{- $policy := deepCopy .Values.policy -}}
{{- /* Helm drops a key set to null, so the chart says "leave GPU pods on their scheduler"
(the policy's schedulerName: null) with an empty name, which names no scheduler anyway. */ -}}
{{- if and (hasKey $policy "schedulerName") (eq (toString (get $policy "schedulerName")) "") -}}
{{- $_ := set $policy "schedulerName" nil -}}
{{- end -}}
{{- toYaml $policy }}
{{- end }}

{{/*
The KubeSchedulerConfiguration: manifests/base/scheduler-config.yaml (a copy in files/, written
by `python -m tests.unit.manifests.helm_schema`),
with the Lease in the release namespace and managedResources from the policy (the GPU-memory
resource first, as there), so that a GPU resource added to the policy reaches the extender as
well as the webhook.
*/}}
{{- define "vramguard.schedulerConfig" -}}
{{- $config := .Files.Get "files/scheduler-config.yaml" | fromYaml -}}
{{- $_ := set $config.leaderElection "resourceNamespace" .Release.Namespace -}}
{{- $gpumem := .Values.policy.gpumemResourceName -}}
{{- $managed := list (dict "name" $gpumem "ignoredByScheduler" false) -}}
{{- range (include "vramguard.resourceNames" . | fromYamlArray) }}
{{- /* A pattern is no resource name; its pods reach the extender by the GPU memory the
webhook gives every GPU pod. */ -}}
{{- if and (ne . $gpumem) (not (hasSuffix "*" .)) }}{{ $managed = append $managed (dict "name" . "ignoredByScheduler" false) }}{{ end -}}
{{- end }}
{{- range $config.extenders }}
{{- $_ := set . "managedResources" $managed -}}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
The resource names that make a GPU pod: every gpuResourceNames entry in policy order, then
gpumemResourceName, each once (gpumem/match_conditions.py resource_names).
*/}}
{{- define "vramguard.resourceNames" -}}
{{- $gpus := required "policy.gpuResourceNames is required (the chart renders the webhook's matchConditions from it)" .Values.policy.gpuResourceNames -}}
{{- $gpumem := required "policy.gpumemResourceName is required (the chart renders the webhook's matchConditions from it)" .Values.policy.gpumemResourceName -}}
{{- /* The policy refuses it too (gpumem.policy), but only when the webhook starts. */ -}}
{{- if has $gpumem $gpus }}
{{- fail "policy.gpumemResourceName must not also be listed in policy.gpuResourceNames" }}
{{- end }}
{{- $names := list -}}
{{- range (append $gpus $gpumem) }}
{{- if not (has . $names) }}{{ $names = append $names . }}{{ end -}}
{{- end }}
{{- toYaml $names }}
{{- end }}

{{/*
The webhook's CEL condition, byte for byte what gpumem/match_conditions.py `match_conditions`
writes (a test compares the two for several policies): see that module for why this shape.
*/}}
{{- define "vramguard.matchExpression" -}}
{{- $names := include "vramguard.resourceNames" . | fromYamlArray -}}
{{- $requests := list -}}
{{- $limits := list -}}
{{- range $names }}
{{- if hasSuffix "*" . }}
{{- /* A pattern scans the keys (match_conditions._test). */ -}}
{{- $requests = append $requests (printf "c.resources.requests.exists(r, r.startsWith('%s'))" (trimSuffix "*" .)) -}}
{{- $limits = append $limits (printf "c.resources.limits.exists(r, r.startsWith('%s'))" (trimSuffix "*" .)) -}}
{{- else }}
{{- $requests = append $requests (printf "'%s' in c.resources.requests" .) -}}
{{- $limits = append $limits (printf "'%s' in c.resources.limits" .) -}}
{{- end }}
{{- end }}
{{- $test := printf "has(c.resources) && ((has(c.resources.requests) && (%s)) || (has(c.resources.limits) && (%s)))" (join " || " $requests) (join " || " $limits) -}}
{{- printf "object.spec.containers.exists(c, %s) || (has(object.spec.initContainers) && object.spec.initContainers.exists(c, %s))" $test $test -}}
{{- /* The ways to a GPU without a GPU request (match_conditions.access_parts). A key the
values leave out takes the policy's default, as the webhook reading the same file would;
Helm drops a key set to null, and `default` would take an empty list for a missing one. */ -}}
{{- $policy := .Values.policy -}}
{{- $envs := include "vramguard.deviceEnvNames" . | fromJsonArray -}}
{{- $classes := ternary $policy.gpuRuntimeClassNames (list "nvidia") (hasKey $policy "gpuRuntimeClassNames") -}}
{{- with $envs }}
{{- $matches := list -}}
{{- range . }}{{ $matches = append $matches (printf "e.name == '%s'" .) }}{{ end -}}
{{- $env := printf "has(c.env) && c.env.exists(e, %s)" (join " || " $matches) -}}
{{- printf " || object.spec.containers.exists(c, %s) || (has(object.spec.initContainers) && object.spec.initContainers.exists(c, %s))" $env $env -}}
{{- end }}
{{- with $classes }}
{{- $quoted := list -}}
{{- range . }}{{ $quoted = append $quoted (printf "'%s'" .) }}{{ end -}}
{{- printf " || (has(object.spec.runtimeClassName) && object.spec.runtimeClassName in [%s])" (join ", " $quoted) -}}
{{- end }}
{{- if not $policy.allowResourceClaims }}
{{- print " || (has(object.spec.resourceClaims) && size(object.spec.resourceClaims) > 0)" -}}
{{- end }}
{{- end }}

{{/*
policy.deviceEnvNames as a JSON list, or the policy's default when the key is gone (Helm drops
a key set to null, and the webhook's policy file then takes the default too). Read by the
webhook's matchConditions and the ephemeral-container policy alike.
*/}}
{{- define "vramguard.deviceEnvNames" -}}
{{- if hasKey .Values.policy "deviceEnvNames" }}{{ .Values.policy.deviceEnvNames | default list | toJson }}{{ else }}["NVIDIA_VISIBLE_DEVICES"]{{ end }}
{{- end }}

{{/*
The namespaces the API server never sends to the webhook: kube-system, the release's, the node
agent's and policy.excludedNamespaces (which the webhook would leave alone anyway), each once.
*/}}
{{- define "vramguard.excludedNamespaces" -}}
{{- $names := list "kube-system" .Release.Namespace .Values.nodeAgent.namespace -}}
{{- range (.Values.policy.excludedNamespaces | default list) }}{{ $names = append $names . }}{{ end -}}
{{- toJson (uniq $names) }}
{{- end }}

{{/* The Secret the webhook serves from, in the modes where it does not write it itself. */}}
{{- define "vramguard.tlsSecretName" -}}
{{- if eq .Values.certificates.mode "provided" -}}
{{- required "certificates.provided.secretName is required with certificates.mode provided" .Values.certificates.provided.secretName -}}
{{- else -}}
vramguard-webhook-tls
{{- end -}}
{{- end }}

{{/* The Service's name as the API server and Prometheus verify it. */}}
{{- define "vramguard.webhookHost" -}}
vramguard-webhook.{{ .Release.Namespace }}.svc
{{- end }}

{{/* The generated ConfigMaps' names: name-<10 characters of the content's hash>. */}}
{{- define "vramguard.policyConfigMap" -}}
vramguard-policy-{{ include "vramguard.policyFile" . | sha256sum | trunc 10 }}
{{- end }}

{{- define "vramguard.schedulerConfigMap" -}}
vramguard-scheduler-config-{{ include "vramguard.schedulerConfig" . | sha256sum | trunc 10 }}
{{- end }}
