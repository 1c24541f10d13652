"""The collector: study -> front -> select -> verify -> picks -> publish -> report ->
push, one function (`pipeline.collect`) over one module per step, typed objects passed
from step to step, each output file written once; and `research`, the next study
version when the data, config or code changed."""
