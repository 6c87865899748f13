"""One partition per configured audience (NEWSLETTER_AUDIENCES)."""

import dagster as dg

from newsletter_pipelines.settings import Settings

audience_partitions = dg.StaticPartitionsDefinition([a.key for a in Settings().audiences])
