"""Everything that talks AMQP (pika): topology declaration, publishing, the client.

Importing it makes pika read message headers with a reader that never raises on what a
broker relays (``roger.broker.amqp_fields``): every roger process that talks AMQP imports
this package (the worker through its partition state) before it connects.
"""

from roger.broker import amqp_fields as _amqp_fields

_amqp_fields.install()
