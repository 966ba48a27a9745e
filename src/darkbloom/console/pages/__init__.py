"""One module per page of console.md; each has its own router, template and script."""

from darkbloom.console.pages import (
    auth,
    billing,
    chat,
    earn,
    keys,
    link,
    models,
    network,
    providers,
)

ROUTERS = (auth.router, chat.router, keys.router, billing.router, models.router, network.router,
           providers.router, link.router, earn.router)
