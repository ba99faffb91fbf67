{{- define "hello.env" -}}
- name: OUT_DIR
  value: {{ .Values.outputDir | quote }}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: POD_UID
  valueFrom: {fieldRef: {fieldPath: metadata.uid}}
- name: NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
- name: SERVICE_ACCOUNT
  valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
- name: GREETING
  valueFrom: {configMapKeyRef: {name: {{ .Release.Name }}-config, key: greeting}}
- name: PASSWORD
  valueFrom: {secretKeyRef: {name: {{ .Release.Name }}-secret, key: password}}
- name: OUT_FILE
  value: "$(OUT_DIR)/$(POD_NAME).json"
{{- end -}}
