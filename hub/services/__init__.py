"""Services carry out the business flows against the canonical model. They are synchronous and
open their own short transactions; edges call them through :meth:`hub.runtime.Hub.run`."""
