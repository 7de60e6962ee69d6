"""The loop by stage: each module is one stage, a plain function over a :class:`~loopml.context.Workspace`.

* :mod:`~loopml.stages.data`: version the datasets, apply the feature view, point-in-time frames;
* :mod:`~loopml.stages.training`: train a candidate (or reuse an identical one), tracked everywhere;
* :mod:`~loopml.stages.validation`: every gate, candidate against production on the same holdout;
* :mod:`~loopml.stages.release`: register with lineage, then promote or start a canary;
* :mod:`~loopml.stages.deploy`: the serving backend serves what the aliases say;
* :mod:`~loopml.stages.monitoring`: the window of live predictions, observed by every monitor;
* :mod:`~loopml.stages.drift_check`: drift of inputs and outputs, and the alert cooldown.

:mod:`~loopml.stages.project` holds what they all read (pipeline config, feature view, production).
Each stage announces its own facts through the event spine (:func:`loopml.events.announce`);
Prefect flows in ``flows/`` call these and add orchestration only.
"""
