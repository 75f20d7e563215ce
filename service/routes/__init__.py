"""One APIRouter per concern; ``service.app`` includes them all."""
