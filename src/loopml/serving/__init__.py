"""Serving: one package for everything between a registered model and an answer.

Read it from the request inwards:

* :mod:`~loopml.serving.transport`: uvicorn underneath, with a header deadline and a connection cap;
* :mod:`~loopml.serving.app`: the Starlette app, its routes and the body reader;
* :mod:`~loopml.serving.requests`: limits, JSON parsing, rows checked against the model signature;
* :mod:`~loopml.serving.oip`: the Open Inference Protocol v2 form of the same requests;
* :mod:`~loopml.serving.core`: routing snapshots (:mod:`~loopml.serving.routing`), micro-batching,
  the prediction log and the metrics (:mod:`~loopml.serving.metrics`), independent of HTTP;
* :mod:`~loopml.serving.runtime`: the server in a thread of this process;
* :mod:`~loopml.serving.builtin`: the ``builtin`` serving backend (a ServingBackend over the runtime);
* :mod:`~loopml.serving.reconcile`: the one algorithm that makes a server serve what the registry's
  aliases say, used by the loop and by :mod:`~loopml.serving.follower` (``loopml serve``).
"""
