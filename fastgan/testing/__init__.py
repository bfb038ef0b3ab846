"""Checks that run without a GPU and catch what a GPU run would reject (issue 10, tests/gpu_ready/).

- :mod:`fastgan.testing.host_sync`: a dispatch mode that records every op that would make the host wait
  for the GPU, with the fastgan line that caused it.
- :mod:`fastgan.testing.fake_cuda`: networks traced on fake CUDA tensors (and their backward on meta
  tensors standing in for CUDA), op by op, to see which implementation, dtype and layout a GPU run gets.
- :mod:`fastgan.testing.specialisations`: every Triton kernel specialisation the models and public ops
  launch, compiled ahead of time for sm_80 and sm_90 and measured with ``ptxas -v``
  (``python -m fastgan.testing.specialisations`` prints the table).
- :mod:`fastgan.testing.tasks`: the training setup of a CUDA run, built on the CPU at tiny sizes.

Nothing here is imported by the library itself.
"""
