"""What invokes a function besides a direct call: one ``Trigger`` shape (``base``) shared by the SQS
and DynamoDB stream event source mappings (``sqs``, ``dynamodb``), SNS subscriptions (``sns``) and
EventBridge schedules (``schedule``); Lambda's asynchronous invocation (``async_invoke``), event
filtering (``filtering``) and the supervisor that restarts a trigger thread that dies (``supervise``)."""
