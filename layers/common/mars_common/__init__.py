"""Shared code of every Mars function and the gRPC shim: one copy of each rule."""
