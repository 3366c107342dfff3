"""The lab: training, evaluation, closed-loop replay, the model card and the benchmarks.

It may import every other part of the package (and ``synthetic``); nothing that serves requests
(nodes, serving, runtime, sensors, client) imports the lab, so a serving host never needs it.
"""
