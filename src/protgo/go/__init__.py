"""How GO terms are scored, below everything that scores them (training, inference,
evaluation, the baselines and the losses): :mod:`protgo.go.scoring`."""
