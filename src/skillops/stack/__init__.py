"""The shared servers and who may use them: the tracking server's accounts and roles
(`accounts`), how long a client waits for a server and what it says when one is away
(`servers`), the limit on password guesses (`throttle`), and the judge of flow runs gone silent
(`silence`). The promotion authority's service is `skillops.gate.service`."""
