"""Tests of tests/fakes: the fakes the end-to-end suite runs beside a real kubelet."""
