"""The vramguard mutating admission webhook.

POST /mutate receives an AdmissionReview for a Pod CREATE and answers, from the namespace
policy, with a JSONPatch that sets the pod's priorityClassName, its GPU-memory request and
limit, and its schedulerName. The decision itself (`webhook.decide.decide`) is pure; the
HTTP edge, the cluster watches and metrics live in their own modules.
"""
