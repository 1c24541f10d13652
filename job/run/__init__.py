"""How processes start: the local driver (`local`: N workers then the collector), several
workers in one pod (`pod`), a study version's Jobs on Kubernetes (`launch`)."""
