from darkbloom.cli.main import app

app()
