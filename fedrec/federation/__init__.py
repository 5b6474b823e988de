"""The federated round loop and what it talks to.

``rounds`` is the loop (sample, train, aggregate, record, step, checkpoint, evaluate)
written against the transport contract it defines; ``device`` is what a device does
(train, clip, upload, evaluate), called by every engine and ClientApp; ``fedavg`` the
FedAvg numerics; ``compression`` upload quantization; ``checkpoint`` resume;
``faults`` fault-injecting transports. Aggregation and every privacy number live in
:mod:`fedrec.privacy`. May import ``fedrec.training``, ``fedrec.privacy``,
``fedrec.models``, ``fedrec.data``, ``fedrec.evaluation``; never Flower, the engine or
the experiments.
"""
