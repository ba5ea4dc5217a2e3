"""One module per group of report sections; each builder takes the ReportContext and returns Sections."""
