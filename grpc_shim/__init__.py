"""Mars's gRPC shim: the Elixir Mars's `event.proto` service in front of the same FIFO queues."""
