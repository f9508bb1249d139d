"""Everything that talks AMQP (pika): topology declaration, publishing, the client."""
