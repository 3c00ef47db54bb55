{{/*
The ephemeral-container ValidatingAdmissionPolicy's CEL (templates/ephemeral-containers-policy
.yaml), byte for byte what gpumem/ephemeral_policy.py renders into the kustomize base (a test
compares the two for several policies): see that module for why this shape.
*/}}

{{/*
The device variables (vramguard.deviceEnvNames) as a CEL list literal. Names are environment
variable names (the policy schema), so none can hold a quote.
*/}}
{{- define "vramguard.ephemeral.envNames" -}}
{{- $literals := list -}}
{{- range (include "vramguard.deviceEnvNames" . | fromJsonArray) }}{{ $literals = append $literals (printf "'%s'" .) }}{{ end -}}
[{{ join ", " $literals }}]
{{- end }}

{{/* TEST: true for an env entry `e` that hands the container cards. */}}
{{- define "vramguard.ephemeral.envTest" -}}
e.name in {{ include "vramguard.ephemeral.envNames" . }} && (has(e.valueFrom) || (has(e.value) && !(e.value in ['', 'void', 'none'])))
{{- end }}

{{/* The ephemeral containers the request adds (not in oldObject, by name). */}}
{{- define "vramguard.ephemeral.added" -}}
has(object.spec.ephemeralContainers) ? object.spec.ephemeralContainers.filter(c, !(has(oldObject.spec.ephemeralContainers) && oldObject.spec.ephemeralContainers.exists(o, o.name == c.name))) : []
{{- end }}

{{/* The added ephemeral containers that set a device variable to cards. */}}
{{- define "vramguard.ephemeral.deviceEnv" -}}
variables.added.filter(c, has(c.env) && c.env.exists(e, {{ include "vramguard.ephemeral.envTest" . }}))
{{- end }}

{{- define "vramguard.ephemeral.messageExpression" -}}
'ephemeral container ' + variables.deviceEnv[0].name + ' sets ' + variables.deviceEnv[0].env.filter(e, {{ include "vramguard.ephemeral.envTest" . }}).map(e, e.name + (has(e.valueFrom) ? ' from valueFrom' : '=' + e.value))[0] + ': ephemeral containers cannot request a GPU, so the container runtime would hand it those cards outside any GPU-memory budget; leave the variable out or set it to void (namespace ' + request.namespace + ')'
{{- end }}

